//! Which workloads a workload-scoped security policy applies to: Istio's rule for
//! AuthorizationPolicy and RequestAuthentication alike (SEMANTICS §4, §5). A policy in the root
//! namespace applies mesh-wide (its selector matching workloads of every namespace), one in a
//! workload's namespace applies when its `selector.matchLabels` ⊆ the workload's labels;
//! `targetRef(s)` policies are for gateways and waypoints, never for a sidecar.

use std::collections::BTreeMap;

use super::Workload;

/// What the scope rule reads of a policy.
pub(crate) trait Scoped {
    /// The kind, for messages (`AuthorizationPolicy`).
    const KIND: &'static str;
    fn namespace(&self) -> &str;
    fn name(&self) -> &str;
    fn selector(&self) -> &BTreeMap<String, String>;
    /// `targetRef(s)` set.
    fn targeted(&self) -> bool;
    /// `file:line` of `metadata.name`.
    fn origin(&self) -> &str;
}

/// Whether `p` applies to `w`.
pub(crate) fn applies_to(p: &impl Scoped, root_namespace: &str, w: &Workload) -> bool {
    !p.targeted()
        && (p.namespace() == root_namespace || p.namespace() == w.namespace)
        && w.has_labels(p.selector())
}

/// Warnings about policies whose selector matches no workload with a sidecar (load time).
pub(crate) fn warn_unselected<P: Scoped>(
    policies: &[P],
    workloads: &[Workload],
    root_namespace: &str,
    warnings: &mut Vec<String>,
) {
    for p in policies.iter().filter(|p| !p.targeted()) {
        let any = workloads
            .iter()
            .filter(|w| w.sidecar)
            .any(|w| applies_to(p, root_namespace, w));
        if any {
            continue;
        }
        let selector = super::load::labels_text(p.selector());
        let scope = if p.selector().is_empty() {
            format!("namespace {}", p.namespace())
        } else if p.namespace() == root_namespace {
            format!("selector {selector} (any namespace)")
        } else {
            format!("selector {selector} in namespace {}", p.namespace())
        };
        warnings.push(format!(
            "{}: {} {}/{} selects no workload with a sidecar ({scope}); it applies to none until one matches",
            p.origin(),
            P::KIND,
            p.namespace(),
            p.name()
        ));
    }
}
