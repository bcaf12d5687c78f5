//! DestinationRule (istio.io/latest/docs/reference/config/networking/destination-rule/): checking a rule's fields at load, finding the rule (and
//! subset) a client sees for a host, the TLS it sets for one port, and turning that `tls`
//! block into the [`TlsOrigination`] a sidecar dials with.
//!
//! Lookup follows Istio: the client's namespace, then the service's, then the root namespace;
//! in the first namespace with a visible matching rule, the most specific host wins, the first
//! such rule decides the top-level policy and the subsets of same-host rules are concatenated.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::error::ConfigError;
use super::hosts::{default_sni, host_match, split_fqdn, visible};
use super::plan::TlsOrigination;
use super::resources::{ClientTls, ClientTlsMode, DestinationRuleSpec, Subset, TrafficPolicy};
use super::source::Document;
use super::MeshConfig;
use crate::identity::SpiffeId;

/// A `DestinationRule` document after validation.
#[derive(Debug, Clone)]
pub struct DestinationRule {
    pub namespace: String,
    pub name: String,
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
    pub export_to: Vec<String>,
    pub(crate) doc: Document,
}

impl DestinationRule {
    /// `namespace/name`, as messages and `decided_by` name the rule.
    pub(crate) fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The TLS a DestinationRule sets for a subset and port, before auto mTLS: `portLevelSettings`
/// for `port` replaces the rule-level policy wholesale (an entry without `tls` means "no
/// setting"); a subset's `tls` overrides, a subset's port entry replaces. `None` ⇒ auto mTLS.
pub fn dr_tls(
    rule: &str,
    top: Option<&TrafficPolicy>,
    subset: Option<(&str, &Subset)>,
    port: u16,
) -> (Option<ClientTls>, String) {
    let mut tls = None;
    let mut by = format!("DestinationRule {rule}");
    if let Some(tp) = top {
        match tp
            .port_level_settings
            .iter()
            .find(|p| p.port.number == u32::from(port))
        {
            Some(pl) => {
                tls = pl.tls.clone();
                by = format!("DestinationRule {rule} portLevelSettings[{port}]");
            }
            None => tls = tp.tls.clone(),
        }
    }
    if let Some((owner, s)) = subset {
        if let Some(tp) = &s.traffic_policy {
            if let Some(pl) = tp
                .port_level_settings
                .iter()
                .find(|p| p.port.number == u32::from(port))
            {
                tls = pl.tls.clone();
                by = format!(
                    "DestinationRule {owner} subset {} portLevelSettings[{port}]",
                    s.name
                );
            } else if let Some(t) = &tp.tls {
                tls = Some(t.clone());
                by = format!("DestinationRule {owner} subset {}", s.name);
            }
        }
    }
    (tls, by)
}

/// The DestinationRule(s) for a host as a client sees them: the first of one namespace
/// decides the top-level policy, subsets of same-host rules are concatenated.
pub(crate) struct MergedRule<'a> {
    pub primary: &'a DestinationRule,
    subsets: Vec<(&'a DestinationRule, &'a Subset)>,
}

/// A subset and the rule that defines it (which may not be the primary rule).
pub(crate) type OwnedSubset<'a> = (&'a DestinationRule, &'a Subset);

impl<'a> MergedRule<'a> {
    /// The subset called `name`, with the rule that defines it.
    pub fn subset(&self, name: &str) -> Option<OwnedSubset<'a>> {
        self.subsets.iter().find(|(_, s)| s.name == name).copied()
    }

    /// [`dr_tls`] of this rule for `subset` and `port`: the `tls` it sets, if any, and where.
    pub fn tls_for(
        &self,
        subset: Option<OwnedSubset<'_>>,
        port: u16,
    ) -> (Option<ClientTls>, String) {
        let owner = subset.map(|(o, s)| (o.id(), s));
        dr_tls(
            &self.primary.id(),
            self.primary.traffic_policy.as_ref(),
            owner.as_ref().map(|(o, s)| (o.as_str(), *s)),
            port,
        )
    }
}

impl MeshConfig {
    /// The rule a client in `client_ns` sees for `host` (a mesh service of `service_ns`, or a
    /// host outside the mesh when `None`).
    pub(crate) fn find_rule(
        &self,
        host: &str,
        client_ns: &str,
        service_ns: Option<&str>,
    ) -> Option<MergedRule<'_>> {
        let mut order = vec![client_ns];
        for ns in [service_ns, Some(self.root_namespace.as_str())]
            .into_iter()
            .flatten()
        {
            if !order.contains(&ns) {
                order.push(ns);
            }
        }
        for ns in order {
            let candidates: Vec<(&DestinationRule, String, usize)> = self
                .destination_rules
                .iter()
                .filter(|d| d.namespace == ns && visible(&d.export_to, &d.namespace, client_ns))
                .filter_map(|d| {
                    let pattern = self.normalize_host(&d.host, &d.namespace);
                    host_match(&pattern, host).map(|s| (d, pattern, s))
                })
                .collect();
            let Some(best) = candidates.iter().map(|(_, _, s)| *s).max() else {
                continue;
            };
            let same: Vec<&(&DestinationRule, String, usize)> =
                candidates.iter().filter(|(_, _, s)| *s == best).collect();
            let primary = same[0].0;
            let mut subsets: Vec<(&DestinationRule, &Subset)> = Vec::new();
            for (d, pattern, _) in &same {
                if *pattern != same[0].1 {
                    continue;
                }
                for s in &d.subsets {
                    if !subsets.iter().any(|(_, o)| o.name == s.name) {
                        subsets.push((d, s));
                    }
                }
            }
            return Some(MergedRule { primary, subsets });
        }
        None
    }
}

/// The origination a rule's `tls` block asks for, toward `host` on `port` (files relative to
/// the rule's own file; ISTIO_MUTUAL accepts `service_ids` unless `subjectAltNames` narrows).
pub(crate) fn originate(
    tls: &ClientTls,
    owner: &DestinationRule,
    port: u16,
    subset: Option<&str>,
    host: &str,
    service_ids: &[SpiffeId],
) -> Result<TlsOrigination, ConfigError> {
    let dir = owner
        .doc
        .file
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = |p: &Option<String>| {
        p.as_ref().map(|p| {
            let p = PathBuf::from(p);
            if p.is_relative() {
                dir.join(p)
            } else {
                p
            }
        })
    };
    Ok(match tls.mode {
        ClientTlsMode::Disable => TlsOrigination::Disable,
        ClientTlsMode::IstioMutual => {
            let allowed_ids = if tls.subject_alt_names.is_empty() {
                service_ids.to_vec()
            } else {
                tls.subject_alt_names
                    .iter()
                    .filter_map(|s| SpiffeId::parse(s).ok()) // validated at load
                    .collect()
            };
            if allowed_ids.is_empty() {
                return Err(owner.doc.error(
                    "spec.host",
                    format!("ISTIO_MUTUAL to {host}, a host outside the mesh, needs subjectAltNames (the SPIFFE IDs allowed to serve it)"),
                ));
            }
            TlsOrigination::IstioMutual {
                allowed_ids,
                sni: tls
                    .sni
                    .clone()
                    .unwrap_or_else(|| default_sni(port, subset, host)),
            }
        }
        ClientTlsMode::Simple => TlsOrigination::Simple {
            ca_certificates: path(&tls.ca_certificates),
            subject_alt_names: tls.subject_alt_names.clone(),
            sni: tls.sni.clone(),
            insecure_skip_verify: tls.insecure_skip_verify,
        },
        ClientTlsMode::Mutual => TlsOrigination::Mutual {
            client_certificate: path(&tls.client_certificate).unwrap_or_default(),
            private_key: path(&tls.private_key).unwrap_or_default(),
            ca_certificates: path(&tls.ca_certificates),
            subject_alt_names: tls.subject_alt_names.clone(),
            sni: tls.sni.clone(),
            insecure_skip_verify: tls.insecure_skip_verify,
        },
    })
}

/// Warns about DestinationRule subsets that select no workload of their service, and rules
/// whose mesh host names no service. A warning, not an error: Istio accepts both, and a stale
/// rule must not block every reload.
pub(crate) fn warn_empty_subsets(config: &MeshConfig, warnings: &mut Vec<String>) {
    for d in &config.destination_rules {
        let host = config.normalize_host(&d.host, &d.namespace);
        let Some((service, namespace)) = split_fqdn(&host) else {
            continue;
        };
        let members = config.service_workloads(service, namespace);
        if members.is_empty() {
            let at = d.doc.locate("spec.host");
            warnings.push(format!(
                "{}:{}: spec.host: DestinationRule {} host {host} names no service of the mesh",
                at.file.display(),
                at.line,
                d.id()
            ));
            continue;
        }
        for (i, s) in d.subsets.iter().enumerate() {
            if !members.iter().any(|w| w.has_labels(&s.labels)) {
                let at = d.doc.locate(&format!("spec.subsets[{i}]"));
                warnings.push(format!(
                    "{}:{}: spec.subsets[{i}]: subset {} of DestinationRule {} matches no workload of {host}",
                    at.file.display(),
                    at.line,
                    s.name,
                    d.id()
                ));
            }
        }
    }
}

/// The checks of one rule's own fields: host, unique subset names, port numbers, `tls`
/// blocks; fields outrider does not act on become one warning.
pub(crate) fn check_spec(
    doc: &Document,
    namespace: &str,
    name: &str,
    spec: &DestinationRuleSpec,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    if spec.host.is_empty() {
        return Err(doc.error("spec.host", "must not be empty"));
    }
    let at = doc.locate("spec");
    let mut ignored = BTreeSet::new();
    if spec.workload_selector.is_some() {
        ignored.insert("workloadSelector");
    }
    let mut policies: Vec<(String, &TrafficPolicy)> = Vec::new();
    if let Some(tp) = &spec.traffic_policy {
        policies.push(("spec.trafficPolicy".into(), tp));
    }
    let mut names = BTreeSet::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        if !names.insert(s.name.as_str()) {
            return Err(doc.error(
                &format!("spec.subsets[{i}].name"),
                format!("duplicate subset {:?}", s.name),
            ));
        }
        if let Some(tp) = &s.traffic_policy {
            policies.push((format!("spec.subsets[{i}].trafficPolicy"), tp));
        }
    }
    for (path, tp) in policies {
        if tp.load_balancer.is_some() {
            ignored.insert("loadBalancer");
        }
        if tp.connection_pool.is_some() {
            ignored.insert("connectionPool");
        }
        if tp.outlier_detection.is_some() {
            ignored.insert("outlierDetection");
        }
        if tp.tunnel.is_some() {
            ignored.insert("tunnel");
        }
        if tp.proxy_protocol.is_some() {
            ignored.insert("proxyProtocol");
        }
        if let Some(tls) = &tp.tls {
            check_tls(doc, &format!("{path}.tls"), tls, warnings)?;
        }
        for (i, pl) in tp.port_level_settings.iter().enumerate() {
            let field = format!("{path}.portLevelSettings[{i}]");
            if pl.port.number == 0 || pl.port.number > 65535 {
                return Err(doc.error(
                    &format!("{field}.port.number"),
                    format!("port {} is out of range 1-65535", pl.port.number),
                ));
            }
            if pl.load_balancer.is_some() || pl.connection_pool.is_some() {
                ignored.insert("portLevelSettings load balancing and connection pools");
            }
            if pl.outlier_detection.is_some() {
                ignored.insert("outlierDetection");
            }
            if let Some(tls) = &pl.tls {
                check_tls(doc, &format!("{field}.tls"), tls, warnings)?;
            }
        }
    }
    if !ignored.is_empty() {
        warnings.push(format!(
            "{}:{}: DestinationRule {namespace}/{name}: {} not acted on by outrider yet; ignored",
            at.file.display(),
            at.line,
            ignored.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

fn check_tls(
    doc: &Document,
    field: &str,
    tls: &ClientTls,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    match tls.mode {
        ClientTlsMode::IstioMutual => {
            for (i, san) in tls.subject_alt_names.iter().enumerate() {
                SpiffeId::parse(san).map_err(|e| {
                    doc.error(
                        &format!("{field}.subjectAltNames[{i}]"),
                        format!("ISTIO_MUTUAL subjectAltNames must be SPIFFE IDs: {e}"),
                    )
                })?;
            }
            if tls.client_certificate.is_some()
                || tls.private_key.is_some()
                || tls.ca_certificates.is_some()
            {
                return Err(doc.error(
                    field,
                    "ISTIO_MUTUAL uses the workload's own SVID and the mesh trust bundle; clientCertificate, privateKey and caCertificates must be empty",
                ));
            }
        }
        ClientTlsMode::Mutual => {
            if tls.client_certificate.is_none() || tls.private_key.is_none() {
                return Err(doc.error(
                    &format!("{field}.clientCertificate"),
                    "MUTUAL needs clientCertificate and privateKey (file paths)",
                ));
            }
        }
        ClientTlsMode::Simple | ClientTlsMode::Disable => {}
    }
    if tls.credential_name.is_some() || tls.ca_crl.is_some() {
        let at = doc.locate(field);
        warnings.push(format!(
            "{}:{}: {field}: credentialName and caCrl are not read by outrider sidecars; ignored",
            at.file.display(),
            at.line
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::resources::PortSelector;
    use super::super::resources::PortTrafficPolicy;
    use super::*;

    fn tls(mode: ClientTlsMode) -> Option<ClientTls> {
        Some(ClientTls {
            mode,
            ..ClientTls::default()
        })
    }

    fn policy(top: Option<ClientTlsMode>, ports: &[(u32, Option<ClientTlsMode>)]) -> TrafficPolicy {
        TrafficPolicy {
            tls: top.and_then(tls),
            port_level_settings: ports
                .iter()
                .map(|(n, m)| PortTrafficPolicy {
                    port: PortSelector { number: *n },
                    tls: m.and_then(tls),
                    load_balancer: None,
                    connection_pool: None,
                    outlier_detection: None,
                })
                .collect(),
            ..TrafficPolicy::default()
        }
    }

    fn subset(name: &str, tp: Option<TrafficPolicy>) -> Subset {
        Subset {
            name: name.into(),
            labels: [("version".to_string(), name.to_string())].into(),
            traffic_policy: tp,
        }
    }

    #[test]
    fn destination_rule_tls_table() {
        use ClientTlsMode::*;
        let top_mutual = policy(Some(IstioMutual), &[]);
        let port_replaces = policy(Some(IstioMutual), &[(8080, Some(Disable))]);
        let port_without_tls = policy(Some(IstioMutual), &[(8080, None)]);
        let v1 = subset("v1", Some(policy(Some(Disable), &[])));
        let v2_no_policy = subset("v2", None);
        let v3_port = subset("v3", Some(policy(Some(Simple), &[(8080, Some(Disable))])));
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            Option<&TrafficPolicy>,
            Option<&Subset>,
            u16,
            Option<ClientTlsMode>,
            &str,
        )> = vec![
            (
                "no policy: auto mTLS",
                None,
                None,
                8080,
                None,
                "DestinationRule d/r",
            ),
            (
                "top-level tls",
                Some(&top_mutual),
                None,
                8080,
                Some(IstioMutual),
                "DestinationRule d/r",
            ),
            (
                "portLevelSettings replace",
                Some(&port_replaces),
                None,
                8080,
                Some(Disable),
                "DestinationRule d/r portLevelSettings[8080]",
            ),
            (
                "other port keeps top-level",
                Some(&port_replaces),
                None,
                9090,
                Some(IstioMutual),
                "DestinationRule d/r",
            ),
            (
                "port entry without tls discards top-level tls",
                Some(&port_without_tls),
                None,
                8080,
                None,
                "DestinationRule d/r portLevelSettings[8080]",
            ),
            (
                "subset tls overrides",
                Some(&top_mutual),
                Some(&v1),
                8080,
                Some(Disable),
                "DestinationRule d/r subset v1",
            ),
            (
                "subset without policy inherits",
                Some(&top_mutual),
                Some(&v2_no_policy),
                8080,
                Some(IstioMutual),
                "DestinationRule d/r",
            ),
            (
                "subset port entry replaces",
                Some(&top_mutual),
                Some(&v3_port),
                8080,
                Some(Disable),
                "DestinationRule d/r subset v3 portLevelSettings[8080]",
            ),
            (
                "subset tls on another port",
                Some(&top_mutual),
                Some(&v3_port),
                9090,
                Some(Simple),
                "DestinationRule d/r subset v3",
            ),
        ];
        for (case, top, sub, port, want, by) in cases {
            let (got, got_by) = dr_tls("d/r", top, sub.map(|s| ("d/r", s)), port);
            assert_eq!(got.map(|t| t.mode), want, "{case}");
            assert_eq!(got_by, by, "{case}");
        }
    }
}
