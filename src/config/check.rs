//! `outrider check`: validate the configuration and print the plan of every workload (or of
//! one): the mode of each inbound port and the resource that decided it, the TLS of each
//! outbound endpoint and why, the AuthorizationPolicies and RequestAuthentication rules that
//! apply to each inbound port, and the warnings.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use super::plan::{keys_text, MtlsMode, Plan, TlsOrigination};

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
    warnings: &'a [String],
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
    if report.warnings.is_empty() {
        out.push_str("\nno warnings\n");
    } else {
        let _ = writeln!(out, "\nwarnings ({}):", report.warnings.len());
        for w in report.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}
