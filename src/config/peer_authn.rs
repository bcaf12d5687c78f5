//! PeerAuthentication resolution (Istio's rules, istio.io/latest/docs/reference/config/security/peer_authentication/): which mTLS mode a workload's sidecar
//! enforces on one port, and which policy decided it. Pure functions over the policies in
//! load order.
//!
//! Precedence: mesh (root namespace, no selector) < namespace (no selector) < workload
//! (selector ⊆ labels) < `portLevelMtls[targetPort]` of the workload policy. UNSET inherits;
//! nothing at all ⇒ PERMISSIVE. A selector in the root namespace is ignored. Among policies of
//! one level the first in load order wins (Istio: the oldest).

use std::collections::BTreeMap;

use super::plan::MtlsMode;
use super::resources::PeerMode;

/// One PeerAuthentication, reduced to what resolution needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    pub namespace: String,
    pub name: String,
    /// `selector.matchLabels`; empty = namespace-wide.
    pub selector: BTreeMap<String, String>,
    pub mode: PeerMode,
    /// `portLevelMtls`, keyed by the app's port (the workload's `targetPort`).
    pub port_level: BTreeMap<u16, PeerMode>,
    /// Where it is written (`file:line`), for messages; empty in tests.
    pub origin: String,
}

/// The level a policy applies at for one workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Mesh,
    Namespace,
    Workload,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Mesh => "mesh",
            Level::Namespace => "namespace",
            Level::Workload => "workload",
        }
    }
}

/// The policies that apply to one workload, one per level (the first in load order), and
/// those that would have applied but lost a tie.
#[derive(Debug, Default)]
pub struct Applicable<'a> {
    pub mesh: Option<&'a PeerPolicy>,
    pub namespace: Option<&'a PeerPolicy>,
    pub workload: Option<&'a PeerPolicy>,
    /// (ignored policy, level, the policy that won)
    pub ties: Vec<(&'a PeerPolicy, Level, &'a PeerPolicy)>,
}

/// The mode for a port and the resource that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDecision {
    pub mode: MtlsMode,
    pub decided_by: String,
}

/// What `decided_by` says when no policy set a mode.
pub const NO_POLICY: &str = "default PERMISSIVE (no PeerAuthentication)";

impl PeerPolicy {
    fn describe(&self, level: Level) -> String {
        format!(
            "PeerAuthentication {}/{} ({})",
            self.namespace,
            self.name,
            level.as_str()
        )
    }
}

/// Picks the applicable policy of each level for a workload in `namespace` with `labels`.
pub fn applicable<'a>(
    policies: &'a [PeerPolicy],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Applicable<'a> {
    let mut out = Applicable::default();
    for p in policies {
        let level = if p.selector.is_empty() {
            if p.namespace == root_namespace {
                Level::Mesh
            } else if p.namespace == namespace {
                Level::Namespace
            } else {
                continue;
            }
        } else if p.namespace == root_namespace {
            continue; // ignored: a selector in the root namespace (Istio ignores it too)
        } else if p.namespace == namespace
            && p.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        {
            Level::Workload
        } else {
            continue;
        };
        let slot = match level {
            Level::Mesh => &mut out.mesh,
            Level::Namespace => &mut out.namespace,
            Level::Workload => &mut out.workload,
        };
        match slot {
            Some(winner) => out.ties.push((p, level, winner)),
            None => *slot = Some(p),
        }
    }
    out
}

/// The namespace-level mode (mesh < namespace; no workload or port level), used by auto mTLS
/// to decide that a whole destination namespace is plaintext.
pub fn namespace_mode(applicable: &Applicable<'_>) -> MtlsMode {
    let mut mode = MtlsMode::Permissive;
    for p in [applicable.mesh, applicable.namespace]
        .into_iter()
        .flatten()
    {
        if let Some(m) = concrete(p.mode) {
            mode = m;
        }
    }
    mode
}

/// The effective mode on `target_port` (the app's port).
pub fn resolve(applicable: &Applicable<'_>, target_port: u16) -> PeerDecision {
    let mut decision = PeerDecision {
        mode: MtlsMode::Permissive,
        decided_by: NO_POLICY.to_string(),
    };
    let levels = [
        (applicable.mesh, Level::Mesh),
        (applicable.namespace, Level::Namespace),
        (applicable.workload, Level::Workload),
    ];
    for (policy, level) in levels {
        if let Some(p) = policy {
            if let Some(mode) = concrete(p.mode) {
                decision = PeerDecision {
                    mode,
                    decided_by: p.describe(level),
                };
            }
        }
    }
    if let Some(p) = applicable.workload {
        if let Some(mode) = p.port_level.get(&target_port).copied().and_then(concrete) {
            decision = PeerDecision {
                mode,
                decided_by: format!(
                    "PeerAuthentication {}/{} portLevelMtls[{target_port}]",
                    p.namespace, p.name
                ),
            };
        }
    }
    decision
}

fn concrete(mode: PeerMode) -> Option<MtlsMode> {
    match mode {
        PeerMode::Unset => None,
        PeerMode::Disable => Some(MtlsMode::Disable),
        PeerMode::Permissive => Some(MtlsMode::Permissive),
        PeerMode::Strict => Some(MtlsMode::Strict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PeerMode::*;

    const ROOT: &str = "istio-system";

    fn policy(ns: &str, name: &str, selector: &[(&str, &str)], mode: PeerMode) -> PeerPolicy {
        PeerPolicy {
            namespace: ns.into(),
            name: name.into(),
            selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mode,
            port_level: BTreeMap::new(),
            origin: String::new(),
        }
    }

    fn with_port(mut p: PeerPolicy, port: u16, mode: PeerMode) -> PeerPolicy {
        p.port_level.insert(port, mode);
        p
    }

    fn age_labels() -> BTreeMap<String, String> {
        [("app", "age"), ("version", "v1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// (case, policies in load order, port, expected mode, expected decided_by)
    fn table() -> Vec<(&'static str, Vec<PeerPolicy>, u16, MtlsMode, &'static str)> {
        let mesh = |m| policy(ROOT, "default", &[], m);
        let ns = |m| policy("default", "default", &[], m);
        let wl = |m| policy("default", "age", &[("app", "age")], m);
        vec![
            (
                "nothing configured",
                vec![],
                9080,
                MtlsMode::Permissive,
                NO_POLICY,
            ),
            (
                "mesh PERMISSIVE",
                vec![mesh(Permissive)],
                9080,
                MtlsMode::Permissive,
                "PeerAuthentication istio-system/default (mesh)",
            ),
            (
                "mesh STRICT",
                vec![mesh(Strict)],
                9080,
                MtlsMode::Strict,
                "PeerAuthentication istio-system/default (mesh)",
            ),
            (
                "mesh UNSET = PERMISSIVE",
                vec![mesh(Unset)],
                9080,
                MtlsMode::Permissive,
                NO_POLICY,
            ),
            (
                "namespace STRICT over mesh PERMISSIVE",
                vec![mesh(Permissive), ns(Strict)],
                9080,
                MtlsMode::Strict,
                "PeerAuthentication default/default (namespace)",
            ),
            (
                "namespace UNSET inherits mesh STRICT",
                vec![mesh(Strict), ns(Unset)],
                9080,
                MtlsMode::Strict,
                "PeerAuthentication istio-system/default (mesh)",
            ),
            (
                "workload PERMISSIVE over namespace STRICT",
                vec![ns(Strict), wl(Permissive)],
                9080,
                MtlsMode::Permissive,
                "PeerAuthentication default/age (workload)",
            ),
            (
                "workload UNSET inherits namespace STRICT",
                vec![mesh(Disable), ns(Strict), wl(Unset)],
                9080,
                MtlsMode::Strict,
                "PeerAuthentication default/default (namespace)",
            ),
            (
                "port-level DISABLE on the target port",
                vec![mesh(Strict), with_port(wl(Unset), 9080, Disable)],
                9080,
                MtlsMode::Disable,
                "PeerAuthentication default/age portLevelMtls[9080]",
            ),
            (
                "port-level on another port leaves this one alone",
                vec![mesh(Strict), with_port(wl(Permissive), 9999, Disable)],
                9080,
                MtlsMode::Permissive,
                "PeerAuthentication default/age (workload)",
            ),
            (
                "port-level UNSET inherits the workload mode",
                vec![mesh(Permissive), with_port(wl(Strict), 9080, Unset)],
                9080,
                MtlsMode::Strict,
                "PeerAuthentication default/age (workload)",
            ),
            (
                "selector in the root namespace is ignored",
                vec![
                    mesh(Strict),
                    policy(ROOT, "age", &[("app", "age")], Disable),
                ],
                9080,
                MtlsMode::Strict,
                "PeerAuthentication istio-system/default (mesh)",
            ),
            (
                "duplicate namespace policies: first in load order wins",
                vec![
                    policy("default", "a-first", &[], Strict),
                    policy("default", "b-second", &[], Disable),
                ],
                9080,
                MtlsMode::Strict,
                "PeerAuthentication default/a-first (namespace)",
            ),
            (
                "selector not matching the workload does not apply",
                vec![
                    ns(Strict),
                    policy("default", "name", &[("app", "name")], Disable),
                ],
                9080,
                MtlsMode::Strict,
                "PeerAuthentication default/default (namespace)",
            ),
            (
                "another namespace's policy does not apply",
                vec![policy("other", "default", &[], Disable)],
                9080,
                MtlsMode::Permissive,
                NO_POLICY,
            ),
        ]
    }

    #[test]
    fn precedence_table() {
        for (case, policies, port, mode, decided_by) in table() {
            let applicable = applicable(&policies, ROOT, "default", &age_labels());
            let got = resolve(&applicable, port);
            assert_eq!(got.mode, mode, "{case}");
            assert_eq!(got.decided_by, decided_by, "{case}");
        }
    }

    #[test]
    fn ties_are_reported() {
        let policies = vec![
            policy("default", "a", &[], Strict),
            policy("default", "b", &[], Disable),
        ];
        let a = applicable(&policies, ROOT, "default", &age_labels());
        assert_eq!(a.ties.len(), 1);
        assert_eq!(a.ties[0].0.name, "b");
        assert_eq!(a.ties[0].2.name, "a");
    }

    #[test]
    fn namespace_mode_ignores_workload_level() {
        let policies = vec![
            policy("default", "default", &[], Disable),
            policy("default", "age", &[("app", "age")], Strict),
        ];
        let a = applicable(&policies, ROOT, "default", &age_labels());
        assert_eq!(namespace_mode(&a), MtlsMode::Disable);
        assert_eq!(resolve(&a, 1).mode, MtlsMode::Strict);
    }
}
