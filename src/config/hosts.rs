//! Host names of the mesh (as Istio completes them): completing the names written in resources to
//! FQDNs, matching them against rule hosts, who may see a resource (`exportTo`), the workloads
//! behind a service, and Istio's default SNI.
//!
//! Host names follow Istio: a short name is relative to the resource's namespace, `name.ns`
//! and `name.ns.svc` are completed to `name.ns.svc.cluster.local` (the trust domain is also
//! accepted in place of `cluster.local`), `*.ns.svc.cluster.local` and `*` are wildcards.

use super::{MeshConfig, Workload};

/// The DNS domain of mesh services (Istio's cluster domain, not the trust domain).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// `name.ns.svc.cluster.local`.
pub fn fqdn(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// `(service, namespace)` of a mesh FQDN.
pub(crate) fn split_fqdn(host: &str) -> Option<(&str, &str)> {
    let rest = host.strip_suffix(&format!(".svc.{CLUSTER_DOMAIN}"))?;
    let (service, namespace) = rest.split_once('.')?;
    (!namespace.contains('.') && !service.is_empty()).then_some((service, namespace))
}

/// How specifically a (normalised) rule host matches a host: `None` = no match; exact beats
/// a longer wildcard suffix beats a shorter one beats `*`.
pub fn host_match(pattern: &str, host: &str) -> Option<usize> {
    if pattern == "*" {
        return Some(0);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return (host.len() > suffix.len() && host.ends_with(suffix)).then_some(suffix.len());
    }
    (pattern == host).then_some(usize::MAX)
}

/// Whether a resource with `exportTo` in `owner` namespace is visible from `client`.
pub(crate) fn visible(export_to: &[String], owner: &str, client: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == client || (e == "." && owner == client))
}

/// Istio's default SNI for ISTIO_MUTUAL: `outbound_.<port>_.<subset>_.<fqdn>`.
pub fn default_sni(port: u16, subset: Option<&str>, host: &str) -> String {
    format!("outbound_.{port}_.{}_.{host}", subset.unwrap_or(""))
}

impl MeshConfig {
    /// Whether `ns` is a namespace of the mesh (the root namespace or one with a workload).
    pub(crate) fn is_namespace(&self, ns: &str) -> bool {
        ns == self.root_namespace || self.workloads.iter().any(|w| w.namespace == ns)
    }

    /// A host as written in a resource of namespace `ns`, in FQDN form (wildcards kept).
    pub(crate) fn normalize_host(&self, host: &str, ns: &str) -> String {
        let h = host.trim_end_matches('.').to_ascii_lowercase();
        if h == "*" {
            return h;
        }
        let td_suffix = format!(".svc.{}", self.trust_domain);
        let h = match h.strip_suffix(&td_suffix) {
            Some(p) => format!("{p}.svc.{CLUSTER_DOMAIN}"),
            None => h,
        };
        if let Some(p) = h.strip_suffix(".svc") {
            return format!("{p}.svc.{CLUSTER_DOMAIN}");
        }
        let parts: Vec<&str> = h.split('.').collect();
        match parts.as_slice() {
            [name] => fqdn(name, ns),
            [name, namespace] if self.is_namespace(namespace) => fqdn(name, namespace),
            _ => h,
        }
    }

    /// The workloads (with or without a sidecar) behind `service.namespace`, in load order.
    pub(crate) fn service_workloads(&self, service: &str, namespace: &str) -> Vec<&Workload> {
        self.workloads
            .iter()
            .filter(|w| w.service == service && w.namespace == namespace)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_matching() {
        let h = "name.default.svc.cluster.local";
        assert_eq!(host_match(h, h), Some(usize::MAX));
        assert!(host_match("*.default.svc.cluster.local", h).is_some());
        assert!(host_match("*.other.svc.cluster.local", h).is_none());
        assert_eq!(host_match("*", h), Some(0));
        assert!(host_match("age.default.svc.cluster.local", h).is_none());
        assert_eq!(
            default_sni(8000, None, "httpbin.foo.svc.cluster.local"),
            "outbound_.8000_._.httpbin.foo.svc.cluster.local"
        );
    }
}
