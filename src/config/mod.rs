//! Mesh configuration: outrider's own kinds plus Istio's security resources, parsed,
//! validated and resolved into a per-workload [`Plan`].
//!
//! - [`source`] reads files and splits documents, remembering where each starts;
//! - [`resources`] is the YAML schema (strict in `spec`, lenient in `metadata`);
//! - [`load`] turns documents into a validated [`MeshConfig`];
//! - [`peer_authn`] and [`outbound`] are the pure resolution rules of SEMANTICS.md §2 and §3;
//! - [`check`] is `outrider check`, [`reload`] the watcher that re-plans on change.
//!
//! Loading plans every workload once, so a configuration that loads is one every sidecar of
//! the mesh can run with, and the contradictions found while planning are warnings of the load.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::identity::SpiffeId;

pub mod check;
pub mod error;
mod load;
pub mod outbound;
pub mod peer_authn;
pub mod plan;
pub mod reload;
pub mod resources;
pub mod source;

pub use error::{ConfigError, Location};
pub use plan::*;

use outbound::DestinationRule;
use outbound::VirtualService;
use peer_authn::PeerPolicy;
use source::Document;

/// Every document of a configuration, loaded and validated.
#[derive(Debug)]
pub struct MeshConfig {
    trust_domain: String,
    root_namespace: String,
    enable_auto_mtls: bool,
    workloads: Vec<Workload>,
    peer_policies: Vec<PeerPolicy>,
    destination_rules: Vec<DestinationRule>,
    virtual_services: Vec<VirtualService>,
    warnings: Vec<String>,
    files: Vec<PathBuf>,
}

/// A `Workload` document after validation.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    pub name: String,
    pub namespace: String,
    pub service: String,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub spiffe_id: SpiffeId,
    pub address: String,
    pub ports: Vec<WorkloadPort>,
    pub outbound: Vec<(SocketAddr, String)>,
    pub sidecar: bool,
    pub doc: Document,
}

#[derive(Debug, Clone)]
pub(crate) struct WorkloadPort {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
    pub protocol: Protocol,
}

/// Loads a file or a directory (`*.yaml`/`*.yml`, sorted by name; multi-document files
/// allowed), validates every document and plans every workload.
pub fn load(path: &Path) -> Result<MeshConfig, ConfigError> {
    load::load(&[path.to_path_buf()])
}

/// Loads several files or directories as one configuration, in the order given (each
/// directory's files sorted by name): `outrider check --config mesh.yaml --config strict.yaml`.
pub fn load_paths(paths: &[PathBuf]) -> Result<MeshConfig, ConfigError> {
    load::load(paths)
}

/// Loads configuration text as if read from a file called `file` (tests, tools).
pub fn load_str(file: &str, text: &str) -> Result<MeshConfig, ConfigError> {
    load::load_texts(vec![(PathBuf::from(file), text.to_string())])
}

impl MeshConfig {
    /// The mesh trust domain (`cluster.local` unless the Mesh document says otherwise).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root namespace (mesh-wide policies), `istio-system` by default.
    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// What the configuration does that outrider ignores or that looks like a mistake:
    /// kinds and fields not acted on, policies that lost a tie, contradictions.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The workloads that run a sidecar, in load order.
    pub fn workload_names(&self) -> Vec<String> {
        self.workloads
            .iter()
            .filter(|w| w.sidecar)
            .map(|w| w.name.clone())
            .collect()
    }

    /// The workloads declared `sidecar: false` (endpoints only), in load order.
    pub fn sidecarless_workload_names(&self) -> Vec<String> {
        self.workloads
            .iter()
            .filter(|w| !w.sidecar)
            .map(|w| w.name.clone())
            .collect()
    }

    /// The files the configuration was read from (what the reload watcher polls).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The plan of the sidecar beside `workload`.
    pub fn plan(&self, workload: &str) -> Result<Plan, ConfigError> {
        let w = self
            .workloads
            .iter()
            .find(|w| w.name == workload)
            .ok_or_else(|| ConfigError::UnknownWorkload {
                name: workload.to_string(),
                known: self.workload_names().join(", "),
            })?;
        if !w.sidecar {
            return Err(ConfigError::NoSidecar(w.name.clone()));
        }
        self.plan_workload(w, &mut Vec::new())
    }

    fn plan_workload(&self, w: &Workload, warnings: &mut Vec<String>) -> Result<Plan, ConfigError> {
        let applicable = peer_authn::applicable(
            &self.peer_policies,
            &self.root_namespace,
            &w.namespace,
            &w.labels,
        );
        for (ignored, level, winner) in &applicable.ties {
            if *level == peer_authn::Level::Workload {
                warnings.push(format!(
                    "{}: PeerAuthentication {}/{} is ignored for workload {}: {}/{} at {} also selects it and comes first in load order",
                    ignored.origin, ignored.namespace, ignored.name, w.name, winner.namespace, winner.name, winner.origin
                ));
            }
        }
        let inbound = w
            .ports
            .iter()
            .map(|p| {
                let decision = peer_authn::resolve(&applicable, p.target_port);
                InboundPlan {
                    name: p.name.clone(),
                    port: p.port,
                    target_port: p.target_port,
                    protocol: p.protocol,
                    mode: decision.mode,
                    decided_by: decision.decided_by,
                }
            })
            .collect();
        let outbound = w
            .outbound
            .iter()
            .enumerate()
            .map(|(i, (bind, to))| outbound::plan_outbound(self, w, i, *bind, to, warnings))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Plan {
            trust_domain: self.trust_domain.clone(),
            workload: WorkloadInfo {
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
                service: w.service.clone(),
                version: w.version.clone(),
                labels: w.labels.clone(),
                spiffe_id: w.spiffe_id.clone(),
            },
            inbound,
            outbound,
        })
    }

    /// The server-side mode of `w` on its port `p`, as its own sidecar resolves it.
    pub(crate) fn inbound_mode(&self, w: &Workload, p: &WorkloadPort) -> peer_authn::PeerDecision {
        let applicable = peer_authn::applicable(
            &self.peer_policies,
            &self.root_namespace,
            &w.namespace,
            &w.labels,
        );
        peer_authn::resolve(&applicable, p.target_port)
    }

    /// The namespace-level (mesh < namespace) mode of `namespace`.
    pub(crate) fn namespace_mode(&self, namespace: &str) -> MtlsMode {
        let applicable = peer_authn::applicable(
            &self.peer_policies,
            &self.root_namespace,
            namespace,
            &BTreeMap::new(),
        );
        peer_authn::namespace_mode(&applicable)
    }
}
