//! `outrider check`: validate the configuration and print the plan of every workload (or of
//! one): the mode of each inbound port and the resource that decided it, the TLS of each
//! outbound endpoint and why, the AuthorizationPolicies and RequestAuthentication rules that
//! apply to each inbound port, and the warnings. For a gateway workload: each port, its
//! servers (protocol, hosts, TLS mode and certificate source) and the rules bound to each
//! server with their destinations.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use super::gateway_plan::{
    CaSource, CertificateSource, GatewayPlan, GatewayServer, HttpAction, HttpMatch, L4Rule,
    StringMatch, TlsVersion, WeightedDestination,
};
use super::plan::{keys_text, MtlsMode, OutboundPlan, OutboundTrafficPolicy, Plan, TlsOrigination};
use crate::policy::authz::Authorizer;
use crate::policy::jwt::Authenticator;

/// What `outrider check` validates and how it prints the result.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// YAML files or directories, combined in order.
    pub config: Vec<PathBuf>,
    /// Only this workload's plan.
    pub workload: Option<String>,
    pub output: Output,
}

/// How `check` prints the plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// The report as JSON for scripts.
    Json,
}

#[derive(Serialize)]
struct Report<'a> {
    trust_domain: &'a str,
    plans: &'a [Plan],
    workloads_without_sidecar: Vec<String>,
    /// For each captured workload (`spec.capture`): which destinations its captured
    /// connections are recognised at.
    capture_maps: Vec<CaptureMap>,
    warnings: &'a [String],
}

/// Where a captured workload's outbound connections go, by destination.
#[derive(Serialize)]
struct CaptureMap {
    workload: String,
    outbound_traffic_policy: OutboundTrafficPolicy,
    destinations: Vec<CapturedDestination>,
    /// Member addresses that do not resolve now (their connections cannot be recognised).
    unresolved: Vec<String>,
}

#[derive(Serialize)]
struct CapturedDestination {
    /// `IP:port` as resolved now.
    destination: String,
    /// The member address it came from (`age:8080`).
    address: String,
    /// `age.default.svc.cluster.local:8080`.
    service: String,
    routes: String,
}

/// Resolves every member address of `plan`'s capture section (once per host name, with the
/// system resolver: what the sidecar will see, give or take DNS changes).
fn capture_map(plan: &Plan, resolve: &mut impl FnMut(&str) -> Option<Vec<IpAddr>>) -> CaptureMap {
    let mut destinations = Vec::new();
    let mut unresolved = Vec::new();
    for s in &plan.capture.services {
        for (host, port) in &s.addresses {
            let ips = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match resolve(host) {
                    Some(ips) if !ips.is_empty() => ips,
                    _ => {
                        if !unresolved.contains(host) {
                            unresolved.push(host.clone());
                        }
                        continue;
                    }
                },
            };
            for ip in ips {
                destinations.push(CapturedDestination {
                    destination: SocketAddr::new(ip, *port).to_string(),
                    address: format!("{host}:{port}"),
                    service: format!("{}:{}", s.route.destination.host, s.route.destination.port),
                    routes: s.route.decided_by.clone(),
                });
            }
        }
    }
    CaptureMap {
        workload: plan.workload.name.clone(),
        outbound_traffic_policy: plan.capture.outbound_traffic_policy,
        destinations,
        unresolved,
    }
}

/// The system resolver, remembering each host's answer for one check.
fn system_resolver() -> impl FnMut(&str) -> Option<Vec<IpAddr>> {
    let mut seen: BTreeMap<String, Option<Vec<IpAddr>>> = BTreeMap::new();
    move |host: &str| {
        seen.entry(host.to_string())
            .or_insert_with(|| {
                (host, 0).to_socket_addrs().ok().map(|addrs| {
                    let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                    ips.sort();
                    ips.dedup();
                    ips
                })
            })
            .clone()
    }
}

impl CheckOptions {
    /// Runs the check; returns the process exit code (0 valid, 1 invalid).
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let json = self.output == Output::Json;
        let result = super::load_paths(&self.config).and_then(|config| {
            let names = match &self.workload {
                Some(w) => vec![w.clone()],
                None => config
                    .workload_names()
                    .into_iter()
                    .chain(config.gateway_names())
                    .collect(),
            };
            let plans = names
                .iter()
                .map(|n| config.plan(n))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((config, plans))
        });
        let (config, plans) = match result {
            Ok(ok) => ok,
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(1));
            }
        };
        let report = Report {
            trust_domain: config.trust_domain(),
            plans: &plans,
            workloads_without_sidecar: if self.workload.is_some() {
                Vec::new()
            } else {
                config.sidecarless_workload_names()
            },
            capture_maps: {
                let mut resolve = system_resolver();
                plans
                    .iter()
                    .filter(|p| p.capture.declared)
                    .map(|p| capture_map(p, &mut resolve))
                    .collect()
            },
            warnings: config.warnings(),
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", table(&report));
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn mode_name(mode: MtlsMode) -> &'static str {
    match mode {
        MtlsMode::Disable => "DISABLE",
        MtlsMode::Permissive => "PERMISSIVE",
        MtlsMode::Strict => "STRICT",
    }
}

fn tls_name(tls: &TlsOrigination) -> &'static str {
    match tls {
        TlsOrigination::Disable => "DISABLE",
        TlsOrigination::IstioMutual { .. } => "ISTIO_MUTUAL",
        TlsOrigination::Simple { .. } => "SIMPLE",
        TlsOrigination::Mutual { .. } => "MUTUAL",
    }
}

/// Rows with columns padded to the widest cell.
fn columns(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = indent.to_string();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// The capture section of a captured workload: what its captured inbound connections get
/// on undeclared ports, and which destinations its outbound ones are recognised at.
fn captured_section(out: &mut String, plan: &Plan, map: &CaptureMap) {
    let u = &plan.capture.undeclared;
    let _ = writeln!(
        out,
        "  captured (outrider iptables + run --capture): inbound on undeclared ports: {} ({}), to the app on the same port",
        mode_name(u.mode),
        u.decided_by
    );
    let policy = match map.outbound_traffic_policy {
        OutboundTrafficPolicy::AllowAny => "ALLOW_ANY: any other destination is passed through",
        OutboundTrafficPolicy::RegistryOnly => "REGISTRY_ONLY: any other destination is refused",
    };
    let _ = writeln!(out, "  captured outbound ({policy}):");
    let mut rows = vec![vec![
        "DESTINATION".into(),
        "ADDRESS".into(),
        "SERVICE".into(),
        "ROUTES".into(),
    ]];
    for d in &map.destinations {
        rows.push(vec![
            d.destination.clone(),
            d.address.clone(),
            d.service.clone(),
            d.routes.clone(),
        ]);
    }
    for host in &map.unresolved {
        rows.push(vec!["(does not resolve)".into(), host.clone()]);
    }
    columns(out, "    ", &rows);
}

/// The header of a route table (see [`route_rows`]).
fn route_header() -> Vec<String> {
    [
        "SUBSET",
        "WEIGHT",
        "ENDPOINT",
        "WORKLOAD",
        "TLS",
        "DECIDED BY",
    ]
    .map(String::from)
    .to_vec()
}

/// One row per endpoint of each route of `o` (a row saying so for a route without any).
fn route_rows(rows: &mut Vec<Vec<String>>, o: &OutboundPlan) {
    for r in &o.routes {
        let subset = r.subset.clone().unwrap_or_else(|| "-".into());
        if r.endpoints.is_empty() {
            rows.push(vec![
                subset.clone(),
                r.weight.to_string(),
                "(no endpoints)".into(),
            ]);
        }
        for e in &r.endpoints {
            rows.push(vec![
                subset.clone(),
                r.weight.to_string(),
                format!("{}:{}", e.host, e.port),
                e.workload.clone().unwrap_or_else(|| "-".into()),
                tls_name(&e.tls).into(),
                e.decided_by.clone(),
            ]);
        }
    }
}

/// The AuthorizationPolicies and RequestAuthentication rules of one port.
fn policies(
    out: &mut String,
    indent: &str,
    port: u16,
    authorization: &Authorizer,
    authentication: &Authenticator,
) {
    let list: Vec<String> = authorization
        .applied()
        .iter()
        .map(|a| {
            let dry = if a.dry_run { " (dry-run)" } else { "" };
            format!("{} {}{dry}", a.action.as_str(), a.name)
        })
        .collect();
    let list = if list.is_empty() {
        "none (everything allowed)".to_string()
    } else {
        list.join(", ")
    };
    let _ = writeln!(out, "{indent}authorization on port {port}: {list}");
    let providers: Vec<String> = authentication
        .providers()
        .iter()
        .map(|pr| {
            let issuer = if pr.issuer.is_empty() {
                "any issuer".to_string()
            } else {
                format!("issuer {}", pr.issuer)
            };
            format!("{} ({issuer}, {})", pr.origin, keys_text(&pr.keys))
        })
        .collect();
    let providers = if providers.is_empty() {
        "none (no JWT checked)".to_string()
    } else {
        providers.join(", ")
    };
    let _ = writeln!(out, "{indent}authentication on port {port}: {providers}");
}

/// A gateway's ports, servers and bound rules.
fn gateway_section(out: &mut String, g: &GatewayPlan) {
    if g.ports.is_empty() {
        out.push_str(
            "  gateway: no Gateway server selects this workload
",
        );
        return;
    }
    out.push_str("  gateway:\n");
    for p in &g.ports {
        let kind = if p.is_tls() {
            "TLS, server chosen by SNI"
        } else {
            "plaintext"
        };
        let _ = writeln!(out, "    port {} ({kind}):", p.port);
        for s in &p.servers {
            server_lines(out, s);
        }
        policies(out, "      ", p.port, &p.authorization, &p.authentication);
    }
}

fn server_lines(out: &mut String, s: &GatewayServer) {
    let protocol = serde_json::to_value(s.protocol)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let tls = match &s.tls {
        None if s.https_redirect => "plaintext, httpsRedirect (301 to https)".to_string(),
        None => "plaintext".to_string(),
        Some(t) => {
            let mode = serde_json::to_value(t.mode)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let mut parts = vec![mode];
            match &t.certificate {
                Some(CertificateSource::Files {
                    certificate,
                    private_key,
                }) => parts.push(format!(
                    "certificate files {} + {}",
                    certificate.display(),
                    private_key.display()
                )),
                Some(CertificateSource::Credential { name }) => {
                    parts.push(format!("certificate credential {name}"))
                }
                None => {}
            }
            match &t.ca_certificates {
                Some(CaSource::Files {
                    ca_certificates,
                    ca_crl,
                }) => parts.push(format!(
                    "client CA file {}{}",
                    ca_certificates.display(),
                    ca_crl
                        .as_ref()
                        .map(|c| format!(" (CRL {}, not enforced)", c.display()))
                        .unwrap_or_default()
                )),
                Some(CaSource::Credential { name }) => {
                    parts.push(format!("client CA credential {name}-cacert, else {name}"))
                }
                None => {}
            }
            if !t.subject_alt_names.is_empty() {
                parts.push(format!("client SANs {}", t.subject_alt_names.join(", ")));
            }
            let v = |v: TlsVersion| match v {
                TlsVersion::Tls12 => "1.2",
                TlsVersion::Tls13 => "1.3",
            };
            parts.push(format!(
                "TLS {}-{}",
                v(t.min_protocol_version),
                v(t.max_protocol_version)
            ));
            if !t.cipher_suites.is_empty() {
                parts.push(format!("ciphers {}", t.cipher_suites.join(":")));
            }
            parts.join(", ")
        }
    };
    let _ = writeln!(
        out,
        "      server {} (Gateway {}, {protocol}, hosts {}): {tls}",
        s.name,
        s.gateway,
        s.hosts.join(", ")
    );
    if s.http.is_empty() && s.tls_routes.is_empty() && s.tcp.is_empty() {
        let unmatched = if s.protocol.is_http() && !s.https_redirect {
            " (every request gets 404)"
        } else {
            ""
        };
        let _ = writeln!(out, "        no rules bound{unmatched}");
    }
    for r in &s.http {
        let matches = if r.matches.is_empty() {
            "any request".to_string()
        } else {
            r.matches
                .iter()
                .map(match_text)
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let action = match &r.action {
            HttpAction::Route(route) => {
                let mut a = vec!["route".to_string()];
                if let Some(rw) = &route.rewrite {
                    if let Some(u) = &rw.uri {
                        a.push(format!("rewrite uri {u}"));
                    }
                    if let Some(au) = &rw.authority {
                        a.push(format!("rewrite authority {au}"));
                    }
                }
                if let Some(t) = route.timeout {
                    a.push(format!("timeout {t:?}"));
                }
                a.push(format!(
                    "retries {}{}",
                    route.retries.attempts,
                    if route.retries.attempts > 0 {
                        format!(" on {}", route.retries.retry_on.join(","))
                    } else {
                        String::new()
                    }
                ));
                a.join(", ")
            }
            HttpAction::Redirect(rd) => {
                let target = format!(
                    "{}{}{}{}",
                    rd.scheme
                        .as_deref()
                        .map(|s| format!("{s}://"))
                        .unwrap_or_default(),
                    rd.authority.as_deref().unwrap_or("<same host>"),
                    rd.port.map(|p| format!(":{p}")).unwrap_or_default(),
                    rd.uri.as_deref().unwrap_or("<same path>")
                );
                format!("redirect {} to {target}", rd.status)
            }
            HttpAction::DirectResponse { status, body } => format!(
                "direct response {status}{}",
                body.as_ref()
                    .map(|b| format!(" ({} bytes)", b.len()))
                    .unwrap_or_default()
            ),
        };
        let _ = writeln!(
            out,
            "        {} [hosts {}]: {matches} => {action}",
            r.origin,
            r.hosts.join(", ")
        );
        if let HttpAction::Route(route) = &r.action {
            destinations(out, &route.destinations);
        }
    }
    for (kind, rules) in [("tls", &s.tls_routes), ("tcp", &s.tcp)] {
        for r in rules {
            l4_line(out, kind, r);
        }
    }
}

fn l4_line(out: &mut String, kind: &str, r: &L4Rule) {
    let mut m = Vec::new();
    if !r.sni_hosts.is_empty() {
        m.push(format!("sni {}", r.sni_hosts.join(", ")));
    }
    if let Some(p) = r.port {
        m.push(format!("port {p}"));
    }
    let m = if m.is_empty() {
        format!("any {kind} connection")
    } else {
        m.join(", ")
    };
    let _ = writeln!(out, "        {}: {m} => forward", r.origin);
    destinations(out, &r.destinations);
}

fn destinations(out: &mut String, ds: &[WeightedDestination]) {
    let mut rows = vec![std::iter::once("DESTINATION".to_string())
        .chain(route_header())
        .collect()];
    for d in ds {
        let mut one = Vec::new();
        route_rows(&mut one, &d.plan);
        let dest = format!("{}:{}", d.plan.destination.host, d.plan.destination.port);
        for row in one {
            rows.push(std::iter::once(dest.clone()).chain(row).collect());
        }
    }
    columns(out, "          ", &rows);
}

/// One `match[]` entry, briefly: `uri prefix /api, method GET, header x-user ~ a.*`.
fn match_text(m: &HttpMatch) -> String {
    fn sm(s: &StringMatch) -> String {
        match s {
            StringMatch::Exact(v) => format!("= {v}"),
            StringMatch::Prefix(v) => format!("prefix {v}"),
            StringMatch::Regex(r) => {
                // as written: without the anchors the loader adds
                let re = r.as_str();
                let bare = re
                    .strip_prefix("^(?:")
                    .and_then(|r| r.strip_suffix(")$"))
                    .unwrap_or(re);
                format!("~ {bare}")
            }
            StringMatch::Present => "present".to_string(),
        }
    }
    let mut parts = Vec::new();
    for (name, v) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name} {}", sm(v)));
        }
    }
    if m.ignore_uri_case {
        parts.push("ignoreUriCase".into());
    }
    for (n, v) in &m.headers {
        parts.push(format!("header {n} {}", sm(v)));
    }
    for (n, v) in &m.without_headers {
        parts.push(format!("not header {n} {}", sm(v)));
    }
    for (n, v) in &m.query_params {
        parts.push(format!("query {n} {}", sm(v)));
    }
    if let Some(p) = m.port {
        parts.push(format!("port {p}"));
    }
    if parts.is_empty() {
        "any request".into()
    } else {
        parts.join(", ")
    }
}

fn table(report: &Report<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "trust domain: {}", report.trust_domain);
    for plan in report.plans {
        let w = &plan.workload;
        let role = if plan.gateway.is_some() {
            ", gateway"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "\nworkload {} (namespace {}, service {}, version {}, {}{role})",
            w.name, w.namespace, w.service, w.version, w.spiffe_id
        );
        if plan.gateway.is_some() {
            // a gateway has no inbound ports of its own: its listeners are its servers
        } else if plan.inbound.is_empty() {
            out.push_str("  inbound: none\n");
        } else {
            out.push_str("  inbound:\n");
            let mut rows = vec![vec![
                "PORT".into(),
                "NAME".into(),
                "APP PORT".into(),
                "PROTOCOL".into(),
                "MODE".into(),
                "DECIDED BY".into(),
            ]];
            for p in &plan.inbound {
                rows.push(vec![
                    p.port.to_string(),
                    p.name.clone(),
                    p.target_port.to_string(),
                    format!("{:?}", p.protocol).to_uppercase(),
                    mode_name(p.mode).into(),
                    p.decided_by.clone(),
                ]);
            }
            columns(&mut out, "    ", &rows);
            for p in &plan.inbound {
                policies(
                    &mut out,
                    "    ",
                    p.port,
                    &p.authorization,
                    &p.authentication,
                );
            }
        }
        if let Some(map) = report.capture_maps.iter().find(|m| m.workload == w.name) {
            captured_section(&mut out, plan, map);
        }
        if let Some(g) = &plan.gateway {
            gateway_section(&mut out, g);
            continue;
        }
        if plan.outbound.is_empty() {
            out.push_str("  outbound: none\n");
            continue;
        }
        out.push_str("  outbound:\n");
        for o in &plan.outbound {
            let _ = writeln!(
                out,
                "    {} -> {} ({}:{}; routes: {})",
                o.bind, o.to, o.destination.host, o.destination.port, o.decided_by
            );
            let mut rows = vec![route_header()];
            route_rows(&mut rows, o);
            columns(&mut out, "      ", &rows);
        }
    }
    if !report.workloads_without_sidecar.is_empty() {
        let _ = writeln!(
            out,
            "\nworkloads without a sidecar (endpoints only): {}",
            report.workloads_without_sidecar.join(", ")
        );
    }
    // The configuration's warnings, then what resolving the captured addresses found now
    // (names that only resolve where the sidecars run, inside Docker say, show here too).
    let warnings: Vec<String> = report
        .warnings
        .iter()
        .cloned()
        .chain(report.capture_maps.iter().flat_map(|m| {
            m.unresolved.iter().map(move |h| {
                format!(
                    "workload {}: address {h:?} does not resolve here: captured connections to it are not recognised as its service until it does",
                    m.workload
                )
            })
        }))
        .collect();
    if warnings.is_empty() {
        out.push_str("\nno warnings\n");
    } else {
        let _ = writeln!(out, "\nwarnings ({}):", warnings.len());
        for w in &warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}
