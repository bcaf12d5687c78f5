//! `outrider check`: validate the configuration and print the plan of every workload (or of
//! one): the mode of each inbound port and the resource that decided it, the TLS of each
//! outbound endpoint and why, the AuthorizationPolicies and RequestAuthentication rules that
//! apply to each inbound port, and the warnings.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use super::plan::{keys_text, MtlsMode, OutboundTrafficPolicy, Plan, TlsOrigination};

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
                None => config.workload_names(),
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

fn table(report: &Report<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "trust domain: {}", report.trust_domain);
    for plan in report.plans {
        let w = &plan.workload;
        let _ = writeln!(
            out,
            "\nworkload {} (namespace {}, service {}, version {}, {})",
            w.name, w.namespace, w.service, w.version, w.spiffe_id
        );
        if plan.inbound.is_empty() {
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
                let applied = p.authorization.applied();
                let list: Vec<String> = applied
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
                let _ = writeln!(out, "    authorization on port {}: {list}", p.port);
                let providers: Vec<String> = p
                    .authentication
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
                let _ = writeln!(out, "    authentication on port {}: {providers}", p.port);
            }
        }
        if let Some(map) = report.capture_maps.iter().find(|m| m.workload == w.name) {
            captured_section(&mut out, plan, map);
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
            let mut rows = vec![vec![
                "SUBSET".into(),
                "WEIGHT".into(),
                "ENDPOINT".into(),
                "WORKLOAD".into(),
                "TLS".into(),
                "DECIDED BY".into(),
            ]];
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
